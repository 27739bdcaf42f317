// GatewayClient: claude_gateway.v1.ChatService over any Connect transport, with `messages.stream()`
// and `messages.create()` taking the Messages API request body, as the Anthropic SDK's do.

import type { Message, MessageCreateParamsBase } from "@anthropic-ai/sdk/resources/messages";
import type { JsonObject } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import { fromApiJson, toApiJson } from "./codec.js";
import { GatewayError } from "./errors.js";
import { ChatService, MessageCreateParamsSchema, MessageSchema, type MessageCreateParams } from "./gen/claude_gateway/v1/chat_pb.js";
import { RESUME_ATTEMPTS, type Resumption } from "./resumption.js";
import { MessageStream } from "./stream.js";

/** The request body of POST /v1/messages, as the SDK types it ("stream" is set by the gateway). */
export type MessageParams = Omit<MessageCreateParamsBase, "stream">;

export interface RequestOptions {
  /** anthropic-beta flags, e.g. ["context-management-2025-06-27"]. */
  betas?: string[];
  /** The call's deadline in milliseconds (default: the client's timeoutMs). */
  timeoutMs?: number;
  /** Aborting it cancels the call. */
  signal?: AbortSignal;
  /** Extra request headers (gRPC metadata). */
  headers?: HeadersInit;
  /** stream(): > 0 asks for a resumable stream, which the gateway keeps reading for this many seconds after the
   * connection drops; the stream then resumes by itself, and abort() cancels it at the gateway too. */
  detachGraceSeconds?: number;
  /** stream(): resumes in a row without an event before a drop is the call's error (default 5). */
  resumeAttempts?: number;
}

export interface GatewayClientOptions {
  /** How to reach the gateway: a gRPC transport in Node (see ./node.ts), a browser transport elsewhere. */
  transport: Transport;
  /** Caller token, sent as `authorization: Bearer <token>`. */
  token?: string;
  /** Headers sent with every call. */
  headers?: HeadersInit;
  /** Default deadline of each call in milliseconds (default 600000, the SDK's default timeout). */
  timeoutMs?: number;
}

export const DEFAULT_TIMEOUT_MS = 600_000;

/** The proto request params for a Messages API request body. */
export function messageParams(body: MessageParams): MessageCreateParams {
  const { stream: _ignored, ...rest } = body as MessageParams & { stream?: unknown };
  return fromApiJson(MessageCreateParamsSchema, JSON.parse(JSON.stringify(rest)) as JsonObject);
}

export class Messages {
  readonly #rpc: Client<typeof ChatService>;
  readonly #options: GatewayClientOptions;

  constructor(rpc: Client<typeof ChatService>, options: GatewayClientOptions) {
    this.#rpc = rpc;
    this.#options = options;
  }

  #callOptions(options: RequestOptions): CallOptions {
    const headers = new Headers(this.#options.headers);
    if (this.#options.token) headers.set("authorization", `Bearer ${this.#options.token}`);
    new Headers(options.headers).forEach((value, key) => headers.set(key, value));
    return { headers, timeoutMs: options.timeoutMs ?? this.#options.timeoutMs ?? DEFAULT_TIMEOUT_MS };
  }

  /** StreamMessage: the reply as a MessageStream, which starts at once. */
  stream(body: MessageParams, options: RequestOptions = {}): MessageStream {
    const params = messageParams(body);
    const callOptions = this.#callOptions(options);
    const detachGraceSeconds = options.detachGraceSeconds ?? 0;
    const resumption: Resumption | undefined =
      detachGraceSeconds > 0
        ? {
            resume: (streamId, afterSeq, { signal, onHeader, onTrailer }) =>
              this.#rpc.resumeStream({ streamId, afterSeq: BigInt(afterSeq) }, { ...callOptions, signal, onHeader, onTrailer }),
            cancel: (streamId) => this.#rpc.cancelStream({ streamId }, { headers: callOptions.headers, timeoutMs: 10_000 }),
            attempts: options.resumeAttempts ?? RESUME_ATTEMPTS,
          }
        : undefined;
    return new MessageStream(
      ({ signal, onHeader, onTrailer }) =>
        this.#rpc.streamMessage(
          { params, betas: options.betas ?? [], detachGraceSeconds },
          { ...callOptions, signal, onHeader, onTrailer },
        ),
      options.signal,
      resumption,
    );
  }

  /** CreateMessage: the whole reply as one Message. */
  async create(body: MessageParams, options: RequestOptions = {}): Promise<Message> {
    try {
      const response = await this.#rpc.createMessage(
        { params: messageParams(body), betas: options.betas ?? [] },
        { ...this.#callOptions(options), signal: options.signal },
      );
      if (response.message === undefined) throw new Error("CreateMessage answered without a message");
      return toApiJson(MessageSchema, response.message) as unknown as Message;
    } catch (reason) {
      throw GatewayError.from(reason);
    }
  }
}

/** A client of the gateway over `options.transport`. */
export class GatewayClient {
  /** `stream()` and `create()`. */
  readonly messages: Messages;
  /** The generated Connect client, for calls with protobuf-es messages. */
  readonly rpc: Client<typeof ChatService>;

  constructor(options: GatewayClientOptions) {
    this.rpc = createClient(ChatService, options.transport);
    this.messages = new Messages(this.rpc, options);
  }
}
