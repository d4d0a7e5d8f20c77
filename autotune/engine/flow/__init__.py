"""The rectified-flow family: SD3 / SD3.5 and FLUX.1, edited with FlowEdit and with flow inversion at separate source
and target guidance."""
