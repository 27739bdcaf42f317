// @claude-gateway/client: the gateway's ChatService for TypeScript, on any Connect transport.
// Node callers import `Gateway` from "@claude-gateway/client/node" (gRPC over HTTP/2); this entry point
// imports nothing Node-specific, so browser transports (Connect-Web) can use it too.

export { Accumulator } from "./accumulator.js";
export { DEFAULT_TIMEOUT_MS, GatewayClient, Messages, messageParams } from "./client.js";
export type { GatewayClientOptions, MessageParams, RequestOptions } from "./client.js";
export { fromApiJson, toApiJson } from "./codec.js";
export { GatewayError, STATUS_NAMES } from "./errors.js";
export { MessageStream, REQUEST_ID_HEADER, STREAM_ID_HEADER } from "./stream.js";
export { RESUME_ATTEMPTS, Numbering, backoffMs, dropped } from "./resumption.js";
export type { CallCallbacks, Resumption } from "./resumption.js";
export type { MessageStreamEvents, StreamStarter } from "./stream.js";
export { USAGE_TRAILER, usageOf } from "./usage.js";
export type { CallUsage } from "./usage.js";
export * as pb from "./gen/claude_gateway/v1/chat_pb.js";

import type { RawMessageStreamEvent } from "@anthropic-ai/sdk/resources/messages";
import { toApiJson } from "./codec.js";
import { MessageStreamEventSchema, type MessageStreamEvent } from "./gen/claude_gateway/v1/chat_pb.js";

/** A relayed event as the Messages API JSON it stands for. */
export function eventToJson(event: MessageStreamEvent): RawMessageStreamEvent {
  return toApiJson(MessageStreamEventSchema, event) as unknown as RawMessageStreamEvent;
}
