/** The shelfwatch version stamped into model manifests and the agent's status. */
export const TOOL_VERSION = '0.1.1';
