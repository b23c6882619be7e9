//! In-process platform for unit, property and fuzz tests. (Filled in by the ring work.)
