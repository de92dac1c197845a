//! sv-stats: (being written)
