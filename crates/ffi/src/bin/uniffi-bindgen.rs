//! `uniffi-bindgen` of the same UniFFI version as the library: generates the Kotlin,
//! Swift and Python modules from the built library (scripts/bindings).

fn main() {
    uniffi::uniffi_bindgen_main()
}
