"""Ways into dtq from an application: `app` (submit over the broker, as `dtq.connect`), `http`
(the REST API's client, `dtq.Client`) and `submitter` (publishing to the leader's queue with
publisher confirms, which `app` and the API's backend use).
"""
