// Resuming a resumable stream after its connection dropped (the same rules as client/claude_gateway/resumption.py):
// ResumeStream with the stream's id and the number of the last event delivered, waiting a little longer before each
// attempt, at most `attempts` times in a row without an event; events a resume sends again are skipped by number.
// Only a drop is resumed: a failure with a status of the network (no ErrorInfo of the gateway's), not the gateway's.

import { Code, ConnectError } from "@connectrpc/connect";
import type { MessageStreamEvent, ResumeStreamResponse, StreamMessageResponse } from "./gen/claude_gateway/v1/chat_pb.js";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** Resumes in a row without an event before the drop is the caller's error. */
export const RESUME_ATTEMPTS = 5;
/** The domain of the gateway's ErrorInfo. */
export const ERROR_DOMAIN = "claude-gateway";
const DROPS = new Set([Code.Unavailable, Code.Internal, Code.Unknown, Code.Canceled, Code.Aborted]); // Node: a reset is ABORTED

/** The callbacks a started call reports its headers and trailers to. */
export interface CallCallbacks {
  signal: AbortSignal;
  onHeader: (headers: Headers) => void;
  onTrailer: (trailers: Headers) => void;
}

/** How a stream resumes, and how it is ended at the gateway. */
export interface Resumption {
  /** A ResumeStream call of `streamId` from the event after `afterSeq`. */
  resume: (streamId: string, afterSeq: number, callbacks: CallCallbacks) => AsyncIterable<ResumeStreamResponse>;
  /** CancelStream. */
  cancel: (streamId: string) => Promise<unknown>;
  /** Resumes in a row without an event, at most. */
  attempts: number;
}

/** Whether a failed call lost its connection (a status the network gave, not the gateway). */
export function dropped(reason: unknown): boolean {
  const error = ConnectError.from(reason);
  if (!DROPS.has(error.code)) return false;
  return !error.findDetails(ErrorInfoSchema).some((info) => info.domain === ERROR_DOMAIN);
}

/** Milliseconds to wait before resume number `attempt` (from 1): 200 ms doubling to 3.2 s, less up to a quarter. */
export function backoffMs(attempt: number): number {
  return Math.min(200 * 2 ** (attempt - 1), 3200) * (1 - 0.25 * Math.random());
}

/** The number of the last event delivered, to skip the events a resume sends again. */
export class Numbering {
  last = 0;

  /** The events of `response` not delivered yet, each noted as delivered. */
  fresh(response: StreamMessageResponse | ResumeStreamResponse): MessageStreamEvent[] {
    const first = Number(response.sequence);
    const out: MessageStreamEvent[] = [];
    response.events.forEach((event, i) => {
      const number = first ? first + i : this.last + 1; // a gateway that does not number: take them all
      if (number <= this.last) return;
      this.last = number;
      out.push(event);
    });
    return out;
  }
}
