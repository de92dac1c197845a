//! sv-image: (being written)
