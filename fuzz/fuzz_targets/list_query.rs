//! `GET /api/games`'s query string, raw: the filters, sort and page, or a 400.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| retrocat::api::fuzz::list_query(raw));
