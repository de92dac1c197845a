//! sv-pipeline: (being written)
