//! Examples are in examples/.
