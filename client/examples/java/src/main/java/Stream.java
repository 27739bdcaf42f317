// The same program in Java: stream one reply through the gateway, print its text as it arrives, then the
// stop reason and output tokens. Built and run by the pom.xml beside src/ (`mvn -q compile exec:exec`), which
// generates the stubs from the proto with protoc and grpc-java's plugin.
import com.claude_gateway.v1.ChatServiceGrpc;
import com.claude_gateway.v1.MessageCreateParams;
import com.claude_gateway.v1.MessageParam;
import com.claude_gateway.v1.MessageStreamEvent;
import com.claude_gateway.v1.StreamMessageRequest;
import com.claude_gateway.v1.StreamMessageResponse;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import java.util.Iterator;
import java.util.concurrent.TimeUnit;

public class Stream {
  public static void main(String[] args) throws InterruptedException {
    String target = System.getenv().getOrDefault("GATEWAY_TARGET", "127.0.0.1:50051");
    ManagedChannel channel = ManagedChannelBuilder.forTarget(target).usePlaintext().build();
    StreamMessageRequest request = StreamMessageRequest.newBuilder()
        .setParams(MessageCreateParams.newBuilder()
            .setModel("claude-sonnet-4-6")
            .setMaxTokens(1024)
            .addMessages(MessageParam.newBuilder().setRole("user").setContentText("Hello")))
        .build();
    Iterator<StreamMessageResponse> responses = ChatServiceGrpc.newBlockingStub(channel)
        .withDeadlineAfter(600, TimeUnit.SECONDS) // the call's deadline
        .streamMessage(request); // a failure throws StatusRuntimeException; StatusProto.fromThrowable has the details
    String stopReason = "";
    int outputTokens = 0;
    while (responses.hasNext()) {
      for (MessageStreamEvent event : responses.next().getEventsList()) {
        switch (event.getTypeCase()) {
          case CONTENT_BLOCK_DELTA:
            if (event.getContentBlockDelta().getDelta().hasTextDelta()) {
              System.out.print(event.getContentBlockDelta().getDelta().getTextDelta().getText());
              System.out.flush();
            }
            break;
          case MESSAGE_DELTA:
            stopReason = event.getMessageDelta().getDelta().getStopReason();
            outputTokens = event.getMessageDelta().getUsage().getOutputTokens();
            break;
          default:
            break;
        }
      }
    }
    System.out.println();
    System.out.println("stop_reason=" + stopReason + " output_tokens=" + outputTokens);
    channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }
}
