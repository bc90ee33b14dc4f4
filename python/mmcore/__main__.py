from mmcore.cli import main

raise SystemExit(main())
