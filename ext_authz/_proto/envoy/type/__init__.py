"""Generated from protos/ by scripts/gen_proto.py. Do not edit."""
