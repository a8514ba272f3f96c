//! Router keys: the router's own chained XXH3-64 over (parent key, block tokens, block extra keys).
//! STUB: to be filled in (owner: hashing work).
