from modelopt_fork.cli import main

raise SystemExit(main())
