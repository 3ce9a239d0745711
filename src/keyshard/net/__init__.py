"""The I/O layer: the only place with sockets and transports.

The connection diagram (the shape of nutcracker's `nc_connection.c`, in keyshard's words)::

  Listener (accept; a client that sent nothing yet is a parked descriptor, no transport)
     │ first byte or EOF
     ▼
                     ClientConn                     PoolRuntime                ServerConn
                 (one per client)               (one per pool)           (<= server_connections
                                                                            per server)
    client ──► data_received ──► parser.feed ──► forward(req) ──route──► send(req) ──► server
                                   │                                        │
                            queue (request order)                    outq (send order)
                                   │                                        │
    client ◄── flush ◄── drain head while done ◄── req_done(req) ◄── data_received ◄── server

Two queues carry every request, as in nutcracker:

- the client's `queue` holds its requests in the order they arrived; a reply is written only
  when every earlier request has its reply, so replies always leave in request order even when
  one client's pipeline spans servers that answer out of order;
- a server connection's `outq` holds the requests written to it; the server answers in order,
  so each reply is paired with the head of `outq`.

Rules:

Rule 1: at most one `transport.write` per connection per loop iteration (`writer.Flusher`):
        replies and requests are appended to a connection's write buffer and flushed once, from
        a single `call_soon`. This was the largest single performance win. A server
        connection, and a client still waiting for replies, are written one iteration later
        (writer Rules 3 and 4), so what arrives meanwhile leaves in the same write.
Rule 2: bytes are forwarded as they came; only split requests get new bytes (from the codec).
Rule 3: a request's reply is set exactly once, by the server reply, a proxy error reply
        (connection refused, timed out, ...) or a local answer; its owner is then told.
Rule 4: nothing here grows without bound: a client whose queue is long, or whose socket does
        not drain, is paused; see `client.py`.
"""
