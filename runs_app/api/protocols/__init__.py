"""Front-end protocols over a run's event stream: the Vercel AI SDK UI message stream (`ai_sdk`) and
AG-UI (`ag_ui`), each a pure transform of the run's events (`framing`), chosen per request (`selection`);
an AG-UI input that answers interrupts is delivered as decisions (`ag_ui_resume`)."""
