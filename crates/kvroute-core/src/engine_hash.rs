//! vLLM-exact prefix-cache block hashes. STUB: to be filled in (owner: hashing work).
