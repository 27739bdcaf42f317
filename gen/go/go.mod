module claude-grpc-gateway/gen/go

go 1.17

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
