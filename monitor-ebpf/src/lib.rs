//! This file exists so that monitor-user can name this crate as a build dependency.
#![no_std]
