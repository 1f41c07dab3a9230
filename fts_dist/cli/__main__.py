from fts_dist.cli import main

raise SystemExit(main())
