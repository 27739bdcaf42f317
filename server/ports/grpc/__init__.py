"""The gRPC port: ChatService on grpc.aio, whose own ServicerContext is the call's context."""
