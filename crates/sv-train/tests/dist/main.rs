//! Data-parallel training on a machine without GPUs, through sv-dist's thread TEST
//! DOUBLE of the Collective trait (its `testing` feature): the averaging arithmetic of
//! the model and the paper's update against one rank (`semantics`), and the real
//! `Trainer` as the ranks of a job (`trainer`): equal replicas, exact resume, failures
//! named, the graceful stop agreed on by every rank.

mod semantics;
mod trainer;
