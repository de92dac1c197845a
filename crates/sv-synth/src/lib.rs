//! sv-synth: (being written)
