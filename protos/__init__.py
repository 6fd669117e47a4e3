"""The Istio-style API as protobuf messages (sources *.proto, generated *_pb2.py)."""
