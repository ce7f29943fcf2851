"""Front-end protocols over a run's event stream: the Vercel AI SDK UI message stream (`ai_sdk`) and
AG-UI (`ag_ui`), each a pure transform of the run's events (`framing`), chosen per request (`selection`);
a submit that answers the waiting run's tool calls is delivered as decisions (`decisions`)."""
