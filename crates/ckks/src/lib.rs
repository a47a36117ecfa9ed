//! RNS-CKKS homomorphic encryption.
