//! The KV indexer. STUB: to be filled in (owner: indexer work).
