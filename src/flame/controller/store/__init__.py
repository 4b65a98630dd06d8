"""MongoDB persistence of the controller: one store class per resource family.

Documents keep the fields that are queried or indexed at the top level and the
resource itself, as protobuf JSON, under `resource`; stores take and return
protobuf messages, so nothing above them sees BSON.
"""
