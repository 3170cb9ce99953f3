from vectorize.cli.main import main

raise SystemExit(main())
