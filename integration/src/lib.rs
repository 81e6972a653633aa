
pub mod apiserver;
pub mod matrix;
pub mod scenario;
pub mod cluster;
pub mod demo;
pub mod runner;
pub mod testpod;
