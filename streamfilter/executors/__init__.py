"""Where the per-shard pipeline runs: in this process (local) or as Ray tasks (ray).

An executor only decides where shards run; reading, matching, writing and receipts
are the engine's, the same everywhere.
"""
