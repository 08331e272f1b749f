"""Package data: pinned checksum tables for upstream downloads."""
