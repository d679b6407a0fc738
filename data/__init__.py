"""The libraries every stage shares: file layout, shards and their manifest, configs and their
click options, loading rows with `datasets`."""
