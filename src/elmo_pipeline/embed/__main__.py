"""``python -m elmo_pipeline.embed``: the embed stage's command line."""

from elmo_pipeline.embed.command import main

raise SystemExit(main())
