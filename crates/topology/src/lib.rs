//! Communication-graph generators and analysis.
