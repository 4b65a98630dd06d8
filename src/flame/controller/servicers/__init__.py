"""Thin gRPC servicers of the controller: parse the request, check the caller,
call a store, convert the answer."""
