"""``python -m elmo_pipeline.embed``: the embed stage's command line."""

from elmo_pipeline.embed.stage import main

raise SystemExit(main())
