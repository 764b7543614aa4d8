//! Integration tests of lomo-data on the shared files (`../shared`, or `$LOMO_SHARED`).
//! One test binary; one module per area.

mod data {
    #[macro_use]
    pub mod common;
    pub mod errors;
    pub mod formats;
    pub mod gguf;
    pub mod mutations;
    pub mod reference;
    pub mod stream;
    pub mod superglue;
    pub mod synthetic;
}
