"""The notifier: durable per-subscriber event streams for flamelets and deployers.

Modules: `store` keeps events, cursors and acknowledgements in MongoDB; `hub`
feeds the open streams of one process; `servicer` serves NotifyService over
gRPC; `app` wires them to a server; `main` is the `flame-notifier` command;
`workers` runs several of them on one port, and `wake` lets them wake each other;
`client` is what subscribers run (`follow_events`).

Delivery semantics, precisely:

* An event is stored before PublishEvent returns, once for all its subscribers
  (one document per publish, whatever their number), under a cursor: the
  publish's number among all publishes on the database. A subscriber's cursors
  are therefore strictly increasing but not consecutive. A notifier restart or
  crash loses no event whose PublishEvent returned. Events are kept 7 days.
* A stream delivers the subscriber's events in cursor order, starting after
  `after_cursor` when that is positive, else after the subscriber's acknowledged
  cursor, and then each new event as it is published by any notifier process on
  the same database (this process's and its sibling workers' at once, others'
  within a poll interval).
  A cursor becomes visible only after every lower one, so no event is skipped.
* The acknowledged cursor only grows: AckEvents(N) marks every event up to N
  handled. A stream opened after it with `after_cursor` 0 starts after N.
* Delivery is at least once: an event stays deliverable until acknowledged, so a
  subscriber that did not acknowledge (crash, broken stream) receives it again on
  its next stream. Cursors make it exactly once for a subscriber that remembers
  the last cursor it handled: it skips anything at or below it, or resubscribes
  with it as `after_cursor` (`client.follow_events` does both).
* Streams do not compete: several streams of one subscriber each receive every
  event. Acknowledgements are per subscriber, not per stream.
"""
