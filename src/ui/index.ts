export {
  readDashboard,
  DashboardSource,
  type Dashboard,
  type DashboardDisk,
  type DashboardSession,
  type DashboardSnapshot,
} from './dashboard.js';
export {
  UiServer,
  DEFAULT_UI_LIMITS,
  dashboardJson,
  isLoopbackHost,
  urlHost,
  type DashboardProvider,
  type UiLimits,
  type UiServerOptions,
} from './server.js';
