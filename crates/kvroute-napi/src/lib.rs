//! N-API bindings. Placeholder until the bindings land.
