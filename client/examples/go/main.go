// The same program in Go: stream one reply through the gateway, print its text as it arrives, then the
// stop reason and output tokens. Stubs: protoc -I protos --go_out=. --go-grpc_out=. chat.proto
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	chatv1 "claude-grpc-gateway/gen/go/claude_gateway/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func main() {
	target := os.Getenv("GATEWAY_TARGET")
	if target == "" {
		target = "127.0.0.1:50051"
	}
	conn, err := grpc.Dial(target, grpc.WithInsecure()) // grpc-go >= 1.34: grpc.WithTransportCredentials(insecure.NewCredentials())
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Second) // the call's deadline
	defer cancel()

	stream, err := chatv1.NewChatServiceClient(conn).StreamMessage(ctx, &chatv1.StreamMessageRequest{
		Params: &chatv1.MessageCreateParams{
			Model:     "claude-sonnet-4-6",
			MaxTokens: 1024,
			Messages:  []*chatv1.MessageParam{{Role: "user", ContentText: proto.String("Hello")}},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	var stopReason string
	var outputTokens int32
	for {
		response, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatalf("%v (details: %v)", err, status.Convert(err).Details()) // ErrorInfo, RetryInfo, BadRequest
		}
		for _, event := range response.Events {
			switch e := event.Type.(type) {
			case *chatv1.MessageStreamEvent_ContentBlockDelta:
				if d, ok := e.ContentBlockDelta.Delta.Type.(*chatv1.ContentBlockDelta_TextDelta); ok {
					fmt.Print(d.TextDelta.Text)
				}
			case *chatv1.MessageStreamEvent_MessageDelta:
				stopReason = e.MessageDelta.Delta.GetStopReason()
				outputTokens = e.MessageDelta.Usage.GetOutputTokens()
			}
		}
	}
	fmt.Println()
	fmt.Printf("stop_reason=%s output_tokens=%d\n", stopReason, outputTokens)
}
