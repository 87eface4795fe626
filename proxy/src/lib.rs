//! gatehouse-proxy library.
