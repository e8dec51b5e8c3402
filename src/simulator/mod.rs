//! Placeholder: the Kapso API simulator (being written).
