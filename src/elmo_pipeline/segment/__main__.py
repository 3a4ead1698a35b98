"""``python -m elmo_pipeline.segment``."""

from elmo_pipeline.segment.command import main

raise SystemExit(main())
