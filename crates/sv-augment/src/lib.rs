//! sv-augment: (being written)
