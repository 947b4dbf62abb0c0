"""The broker: what sits between the store and the wire (subscriptions, filtering, delivery)."""
