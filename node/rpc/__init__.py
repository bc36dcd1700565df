"""The gRPC layer of a node: servicers, conversion to and from the protobuf types, clients, auth and TLS."""
