// MessageStream: one StreamMessage call, read as the Anthropic TypeScript SDK's MessageStream reads SSE:
// `on("text")`, `on("event")`, `finalMessage()`, `finalText()`, `for await (const event of stream)`,
// `abort()`. Events and messages are the Messages API JSON (typed by the SDK's own type declarations).
// A resumable stream (`detachGraceSeconds`) whose connection drops is resumed where it was (./resumption.ts),
// so its events, text and final message are an uninterrupted stream's; `on("reconnect")` says when.

import type { ContentBlock, Message, RawMessageStreamEvent, TextCitation } from "@anthropic-ai/sdk/resources/messages";
import { Code, ConnectError } from "@connectrpc/connect";
import { Accumulator } from "./accumulator.js";
import { toApiJson } from "./codec.js";
import { GatewayError } from "./errors.js";
import { MessageStreamEventSchema, type ResumeStreamResponse, type StreamMessageResponse } from "./gen/claude_gateway/v1/chat_pb.js";
import { Numbering, backoffMs, dropped, type CallCallbacks, type Resumption } from "./resumption.js";

/** What a listener of each event receives. */
export interface MessageStreamEvents {
  /** The call's response headers arrived (the upstream answered). */
  connect: () => void;
  /** Every relayed event, as Messages API JSON, with the message accumulated so far. */
  event: (event: RawMessageStreamEvent, snapshot: Message) => void;
  /** Text appended to a text block, and the block's whole text so far. */
  text: (textDelta: string, textSnapshot: string) => void;
  /** A citation appended to a text block, and the block's citations so far. */
  citation: (citation: TextCitation, citationsSnapshot: TextCitation[]) => void;
  /** A piece of a tool call's input JSON, and the input parsed so far. */
  inputJson: (partialJson: string, jsonSnapshot: unknown) => void;
  /** Reasoning appended to a thinking block, and the block's reasoning so far. */
  thinking: (thinkingDelta: string, thinkingSnapshot: string) => void;
  /** The signature of a thinking block. */
  signature: (signature: string) => void;
  /** A content block is complete. */
  contentBlock: (block: ContentBlock) => void;
  /** The message is complete (message_stop). */
  message: (message: Message) => void;
  /** The stream ended normally with this message. */
  finalMessage: (message: Message) => void;
  /** The connection dropped and the stream is being resumed: attempt number `attempt` of a run without events. */
  reconnect: (attempt: number, error: GatewayError) => void;
  /** The call failed (after abort() too). */
  error: (error: GatewayError) => void;
  /** abort() ended the call. */
  abort: (error: GatewayError) => void;
  /** The call is over, however it ended. */
  end: () => void;
}

type Listener<E extends keyof MessageStreamEvents> = { fn: MessageStreamEvents[E]; once: boolean };

/** The stream of a started call: what `Gateway.messages.stream()` gives a MessageStream to read. */
export type StreamStarter = (callbacks: CallCallbacks) => AsyncIterable<StreamMessageResponse>;

export const REQUEST_ID_HEADER = "anthropic-request-id";
export const STREAM_ID_HEADER = "claude-gateway-stream-id";

export class MessageStream implements AsyncIterable<RawMessageStreamEvent> {
  /** Aborting it cancels the call, which closes the gateway's upstream request at once. */
  readonly controller = new AbortController();
  /** Every event received so far, as Messages API JSON, pings included (the SDK drops those). */
  readonly receivedEvents: RawMessageStreamEvent[] = [];
  /** The call's response headers, once they arrived. */
  headers: Headers | undefined;
  /** The call's trailers, once the call ended (usage and cost reports go here). */
  trailers: Headers | undefined;
  /** How many times the stream was resumed after a dropped connection. */
  resumes = 0;

  readonly #accumulator = new Accumulator();
  readonly #listeners: { [E in keyof MessageStreamEvents]?: Array<Listener<E>> } = {};
  readonly #done: Promise<void>;
  readonly #resumption: Resumption | undefined;
  readonly #numbering = new Numbering();
  #ended = false;
  #error: GatewayError | undefined;

  constructor(start: StreamStarter, signal?: AbortSignal, resumption?: Resumption) {
    this.#resumption = resumption;
    if (signal !== undefined) {
      if (signal.aborted) this.controller.abort(signal.reason);
      signal.addEventListener("abort", () => this.controller.abort(signal.reason), { once: true });
    }
    // Start on the next microtask, so that listeners and iterators attached right away see every event.
    this.#done = Promise.resolve().then(() => this.#run(start));
    this.#done.catch(() => {}); // failures reach callers through finalMessage(), done(), iteration or on("error")
  }

  async #run(start: StreamStarter): Promise<void> {
    const callbacks: CallCallbacks = {
      signal: this.controller.signal,
      onHeader: (headers) => {
        if (this.headers === undefined) {
          this.headers = new Headers(headers); // a copy: a browser's fetch gives immutable headers, a resume adds to them
          this.#emit("connect");
        } else headers.forEach((value, key) => this.headers?.set(key, value)); // a resume's (the request id, now)
      },
      onTrailer: (trailers) => {
        this.trailers = trailers;
      },
    };
    try {
      let responses: AsyncIterable<StreamMessageResponse | ResumeStreamResponse> = start(callbacks);
      let failures = 0;
      for (;;) {
        try {
          for await (const response of responses) {
            for (const event of this.#numbering.fresh(response)) {
              failures = 0;
              this.#add(toApiJson(MessageStreamEventSchema, event) as unknown as RawMessageStreamEvent);
            }
          }
          break;
        } catch (reason) {
          const resumption = this.#resumption;
          const streamId = this.streamId;
          if (resumption === undefined || streamId === undefined || this.controller.signal.aborted) throw reason;
          if (failures >= resumption.attempts || !dropped(reason)) throw reason;
          failures += 1;
          this.resumes += 1;
          this.#emit("reconnect", failures, GatewayError.from(reason));
          await new Promise((resolve) => setTimeout(resolve, backoffMs(failures)));
          if (this.controller.signal.aborted) throw reason;
          responses = resumption.resume(streamId, this.#numbering.last, callbacks);
        }
      }
      if (this.#accumulator.message === undefined) throw new Error("the stream ended before message_start");
    } catch (reason) {
      const aborted = this.controller.signal.aborted;
      const error = aborted
        ? GatewayError.from(new ConnectError("the call was aborted", Code.Canceled))
        : GatewayError.from(reason);
      this.#error = error;
      if (aborted) this.#emit("abort", error);
      this.#emit("error", error);
      this.#ended = true;
      this.#emit("end");
      throw error;
    }
    this.#ended = true;
    this.#emit("finalMessage", this.#accumulator.message);
    this.#emit("end");
  }

  #add(event: RawMessageStreamEvent): void {
    this.receivedEvents.push(event);
    if ((event.type as string) === "ping") return; // the SDK's stream drops pings
    this.#accumulator.add(event);
    const snapshot = this.#accumulator.message;
    if (snapshot === undefined) return; // a ping before message_start
    this.#emit("event", event, snapshot);
    if (event.type === "content_block_delta") {
      const block = snapshot.content[event.index];
      const delta = event.delta;
      if (delta.type === "text_delta" && block?.type === "text") this.#emit("text", delta.text, block.text);
      else if (delta.type === "citations_delta" && block?.type === "text") this.#emit("citation", delta.citation, block.citations ?? []);
      else if (delta.type === "input_json_delta" && (block?.type === "tool_use" || block?.type === "server_tool_use"))
        this.#emit("inputJson", delta.partial_json, block.input);
      else if (delta.type === "thinking_delta" && block?.type === "thinking") this.#emit("thinking", delta.thinking, block.thinking);
      else if (delta.type === "signature_delta" && block?.type === "thinking") this.#emit("signature", block.signature);
    } else if (event.type === "content_block_stop") {
      const block = snapshot.content[event.index];
      if (block !== undefined) this.#emit("contentBlock", block);
    } else if (event.type === "message_stop") {
      this.#emit("message", snapshot);
    }
  }

  #emit<E extends keyof MessageStreamEvents>(name: E, ...args: Parameters<MessageStreamEvents[E]>): void {
    const listeners = this.#listeners[name];
    if (listeners === undefined) return;
    this.#listeners[name] = listeners.filter((l) => !l.once) as never;
    for (const { fn } of listeners) (fn as (...a: unknown[]) => void)(...args);
  }

  /** Call `listener` on each `name` event; returns this, to chain. */
  on<E extends keyof MessageStreamEvents>(name: E, listener: MessageStreamEvents[E]): this {
    const listeners = (this.#listeners[name] ??= []) as Array<Listener<E>>;
    listeners.push({ fn: listener, once: false });
    return this;
  }

  /** Call `listener` on the next `name` event only. */
  once<E extends keyof MessageStreamEvents>(name: E, listener: MessageStreamEvents[E]): this {
    const listeners = (this.#listeners[name] ??= []) as Array<Listener<E>>;
    listeners.push({ fn: listener, once: true });
    return this;
  }

  /** Stop calling `listener` on `name` events. */
  off<E extends keyof MessageStreamEvents>(name: E, listener: MessageStreamEvents[E]): this {
    const listeners = this.#listeners[name] as Array<Listener<E>> | undefined;
    if (listeners !== undefined) this.#listeners[name] = listeners.filter((l) => l.fn !== listener) as never;
    return this;
  }

  /** Cancel the call (a resumable stream at the gateway too, with CancelStream). finalMessage() and the iteration
   * then reject with a CANCELLED GatewayError. */
  abort(): void {
    const streamId = this.streamId;
    if (this.#resumption !== undefined && !this.#ended && streamId !== undefined && !this.controller.signal.aborted) {
      this.#resumption.cancel(streamId).catch(() => {}); // unreachable or already over: its detach grace ends it
    }
    this.controller.abort();
  }

  /** Resolves when the stream ended normally; rejects with the GatewayError otherwise. */
  done(): Promise<void> {
    return this.#done;
  }

  /** True once the call is over. */
  get ended(): boolean {
    return this.#ended;
  }

  /** The message accumulated so far (undefined before message_start). */
  get currentMessage(): Message | undefined {
    return this.#accumulator.message;
  }

  /** The upstream request id (response header anthropic-request-id; a resumable stream's comes with its trailers),
   * once the upstream answered. */
  get requestId(): string | undefined {
    return this.headers?.get(REQUEST_ID_HEADER) ?? this.trailers?.get(REQUEST_ID_HEADER) ?? undefined;
  }

  /** The stream's id (response header claude-gateway-stream-id), for ResumeStream and CancelStream. */
  get streamId(): string | undefined {
    return this.headers?.get(STREAM_ID_HEADER) ?? undefined;
  }

  /** The JSON value of trailer `key` (e.g. usage or cost reports), or undefined when absent. */
  trailerJson(key: string): unknown {
    const value = this.trailers?.get(key);
    return value === null || value === undefined ? undefined : JSON.parse(value);
  }

  /** Waits for the end of the stream and returns the accumulated message. */
  async finalMessage(): Promise<Message> {
    await this.#done;
    return this.#accumulator.message!;
  }

  /** Waits for the end of the stream and returns the text of its text blocks, joined. */
  async finalText(): Promise<string> {
    const message = await this.finalMessage();
    const texts = message.content.flatMap((block) => (block.type === "text" ? [block.text] : []));
    if (texts.length === 0) {
      const kinds = message.content.map((block) => block.type).join(",");
      throw new Error(`finalText() needs a text block; the reply has ${kinds || "no"} content block(s)`);
    }
    return texts.join("");
  }

  /** The events from now on, as Messages API JSON; breaking out of the loop aborts the call. */
  [Symbol.asyncIterator](): AsyncIterator<RawMessageStreamEvent> {
    const queue: RawMessageStreamEvent[] = [];
    const waiting: Array<{ resolve: (r: IteratorResult<RawMessageStreamEvent>) => void; reject: (e: unknown) => void }> = [];
    let finished = false;
    const onEvent = (event: RawMessageStreamEvent): void => {
      const next = waiting.shift();
      if (next !== undefined) next.resolve({ value: event, done: false });
      else queue.push(event);
    };
    this.on("event", onEvent);
    this.#done.then(
      () => {
        finished = true;
        for (const next of waiting.splice(0)) next.resolve({ value: undefined, done: true });
      },
      (error: unknown) => {
        finished = true;
        for (const next of waiting.splice(0)) next.reject(error);
      },
    );
    return {
      next: async () => {
        const event = queue.shift();
        if (event !== undefined) return { value: event, done: false };
        if (finished || this.#ended) {
          if (this.#error !== undefined) throw this.#error;
          return { value: undefined, done: true };
        }
        return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
      },
      return: async () => {
        this.off("event", onEvent);
        if (!this.#ended) this.abort();
        return { value: undefined, done: true };
      },
    };
  }
}
